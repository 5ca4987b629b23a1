// Reactions: the emoji a listener can send, and the floating animation driven
// by growth of the totals in state.json (everyone sees everyone's reactions).

// The server accepts exactly these (api_spaces.EMOJIS).
export const EMOJI = ["👏", "❤️", "😂", "🔥", "💯", "🙌", "😮", "👍"];
export const LABELS = {
  "👏": "Applause",
  "❤️": "Love",
  "😂": "Laughing",
  "🔥": "Fire",
  "💯": "Hundred points",
  "🙌": "Raised hands",
  "😮": "Wow",
  "👍": "Thumbs up",
};
export const MAX_FLOATS_PER_UPDATE = 12;
const FLOAT_MS = 2600;

/**
 * How many of each emoji to float for a new state: growth of each total,
 * minus those this page already floated for its own clicks, capped in total.
 * Pure: returns {bursts: {emoji: n}, pending: {emoji: n left}}.
 */
export function reactionBursts(previous, next, pendingOwn = {}, cap = MAX_FLOATS_PER_UPDATE) {
  const bursts = {};
  const pending = { ...pendingOwn };
  let budget = cap;
  if (!previous) return { bursts, pending };
  for (const [emoji, total] of Object.entries(next || {})) {
    let grown = Math.max(0, (Number(total) || 0) - (Number(previous[emoji]) || 0));
    const own = Math.min(grown, pending[emoji] || 0);
    grown -= own;
    if (own) pending[emoji] -= own;
    const n = Math.min(grown, budget);
    if (n > 0) {
      bursts[emoji] = n;
      budget -= n;
    }
  }
  return { bursts, pending };
}

/** Float `count` copies of emoji up the layer, spread over a second. */
export function floatEmoji(layer, emoji, count) {
  const reduced = matchMedia("(prefers-reduced-motion: reduce)").matches;
  for (let i = 0; i < count; i += 1) {
    const el = document.createElement("span");
    el.className = "float-emoji";
    el.dataset.emoji = emoji;
    el.textContent = emoji;
    el.style.left = `${10 + Math.random() * 80}%`;
    el.style.animationDelay = `${reduced ? 0 : Math.round(Math.random() * 800)}ms`;
    layer.append(el);
    setTimeout(() => el.remove(), FLOAT_MS + 900);
  }
}

// Plays a space's LL-HLS playlist: hls.js in low-latency mode where Media
// Source Extensions exist, the browser's own HLS (Safari, iOS) otherwise.

const NATIVE_HLS = "application/vnd.apple.mpegurl";

export function hlsSupported() {
  return Boolean(window.Hls && window.Hls.isSupported());
}

export function nativeHls(audio) {
  return Boolean(audio.canPlayType(NATIVE_HLS));
}

/**
 * new HlsPlayer(audio, {live, onError}); await player.load(url); player.latency_s(); player.destroy()
 * live=false plays a VOD playlist from the start. onError(sentence) reports fatal errors;
 * onRecover() is called once audio flows again after an error, so the page can clear it.
 */
export class HlsPlayer {
  constructor(audio, { live = true, onError = () => {}, onRecover = () => {} } = {}) {
    this.audio = audio;
    this.live = live;
    this.onError = (...args) => {
      this.failing = true;
      onError(...args);
    };
    this.onRecover = onRecover;
    this.failing = false;
    this.hls = null;
    this.audio.addEventListener("playing", () => this.recovered());
    this.audio.addEventListener("timeupdate", () => this.recovered());
  }

  recovered() {
    if (!this.failing || this.audio.paused) return;
    this.failing = false;
    this.onRecover();
  }

  async load(url, { play = true } = {}) {
    this.destroy();
    if (hlsSupported()) {
      const hls = new window.Hls({
        lowLatencyMode: this.live,
        startPosition: this.live ? -1 : 0,
        backBufferLength: this.live ? 30 : 90,
        // Catch up gently after a stall instead of staying behind for good.
        maxLiveSyncPlaybackRate: this.live ? 1.5 : 1,
        enableWorker: true,
      });
      this.hls = hls;
      let recovered = false;
      hls.on(window.Hls.Events.ERROR, (_event, data) => {
        if (!data.fatal) return;
        if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR && !recovered) {
          recovered = true;
          hls.recoverMediaError();
          return;
        }
        if (data.type === window.Hls.ErrorTypes.NETWORK_ERROR) {
          this.onError("The audio stream could not be loaded; retrying…", data);
          setTimeout(() => this.hls === hls && hls.startLoad(), 2000);
          return;
        }
        this.onError("The audio stream cannot be played in this browser.", data);
      });
      hls.on(window.Hls.Events.FRAG_BUFFERED, () => this.recovered());
      hls.loadSource(url);
      hls.attachMedia(this.audio);
    } else if (nativeHls(this.audio)) {
      this.audio.src = url;
    } else {
      if (!window.Hls) {
        // the server was installed without its web player (built without npm, see scripts/setup.sh)
        throw new Error("This server is missing its web audio player (hls.js), so only Safari can play here; ask the operator to install townhall from its built package.");
      }
      throw new Error("This browser cannot play live audio; try a current Chrome, Firefox or Safari.");
    }
    if (play) await this.audio.play();
  }

  /** Seconds behind the live edge, or null when unknown. */
  latency_s() {
    if (this.hls && Number.isFinite(this.hls.latency) && this.hls.latency > 0) return this.hls.latency;
    const ranges = this.audio.seekable;
    if (ranges && ranges.length) {
      const behind = ranges.end(ranges.length - 1) - this.audio.currentTime;
      if (Number.isFinite(behind) && behind >= 0) return behind;
    }
    return null;
  }

  destroy() {
    this.failing = false;
    if (this.hls) {
      this.hls.destroy();
      this.hls = null;
    }
    this.audio.pause();
    this.audio.removeAttribute("src");
    this.audio.load();
  }
}

"""A space's calendar entry (RFC 5545 iCalendar), so a listener can put a
scheduled space in their calendar: one VEVENT, text escaped, lines folded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

# A talk has no planned end; calendars want one, so the entry lasts an hour.
EVENT_DURATION = timedelta(hours=1)
_FOLD_OCTETS = 75


def _escape(text: str) -> str:
    return (
        text.replace("\\", "\\\\")
        .replace(";", "\\;")
        .replace(",", "\\,")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
        .replace("\r", "\\n")
    )


def _fold(line: str) -> str:
    """Fold a content line at 75 octets without splitting a UTF-8 character."""
    out: list[str] = []
    current = ""
    size = 0
    limit = _FOLD_OCTETS
    for char in line:
        width = len(char.encode("utf-8"))
        if size + width > limit:
            out.append(current)
            current, size, limit = " ", 1, _FOLD_OCTETS
        current += char
        size += width
    out.append(current)
    return "\r\n".join(out)


def _stamp(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def event_ics(
    *,
    space_id: str,
    title: str,
    description: str,
    starts_at: datetime,
    page_url: str,
    host_name: str,
    now: datetime,
) -> str:
    """The whole ``.ics`` document (CRLF line ends) for one space."""
    summary = title or "townhall space"
    body = description.strip()
    hosted = f"Hosted by {host_name}. " if host_name else ""
    details = f"{hosted}{body}\n\nListen: {page_url}" if body else f"{hosted}Listen: {page_url}"
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//townhall//live audio spaces//EN",
        "CALSCALE:GREGORIAN",
        "METHOD:PUBLISH",
        "BEGIN:VEVENT",
        f"UID:{space_id}@townhall",
        f"DTSTAMP:{_stamp(now)}",
        f"DTSTART:{_stamp(starts_at)}",
        f"DTEND:{_stamp(starts_at + EVENT_DURATION)}",
        f"SUMMARY:{_escape(summary)}",
        f"DESCRIPTION:{_escape(details)}",
        f"URL:{page_url}",
        f"LOCATION:{_escape(page_url)}",
        "BEGIN:VALARM",
        "ACTION:DISPLAY",
        f"DESCRIPTION:{_escape(summary)} starts in 10 minutes",
        "TRIGGER:-PT10M",
        "END:VALARM",
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    return "\r\n".join(_fold(line) for line in lines) + "\r\n"

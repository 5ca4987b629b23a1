"""The nginx secure_link cookies a join sets on a capped space, so nginx (or a
CDN with the same check) verifies media requests without asking the origin
(deploy/nginx-cache.conf, ``edge_link_secret``)."""

from __future__ import annotations

import base64
import hashlib


def edge_link(secret: str, space_id: str, expires_s: int) -> str:
    """nginx secure_link's value: base64url (no padding) of
    md5("<expires>/spaces/<id>/ <secret>") (see deploy/nginx-cache.conf)."""
    digest = hashlib.md5(f"{expires_s}/spaces/{space_id}/ {secret}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def edge_link_cookies(
    secret: str, space_id: str, expires_s: int, ttl_s: int
) -> list[tuple[bytes, bytes]]:
    scope = f"Path=/spaces/{space_id}/; Max-Age={ttl_s}; HttpOnly; SameSite=Lax"
    link = edge_link(secret, space_id, expires_s)
    return [
        (b"set-cookie", f"th_link={link}; {scope}".encode("latin-1")),
        (b"set-cookie", f"th_exp={expires_s}; {scope}".encode("latin-1")),
    ]

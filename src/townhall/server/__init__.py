"""HTTP, WebRTC and CLI adapters over the pure core."""

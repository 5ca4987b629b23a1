"""Pages and static assets served by townhall itself."""

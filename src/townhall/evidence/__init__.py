"""What a space saw, as public, verifiable evidence: 10 s interval records of
arrivals, networks, rates, challenges, admission and goodput, labelled by a
stated rule (:mod:`.rule`), hash-chained and signed with the node's Ed25519
key (:mod:`.chain`). Pure: adapters feed :class:`.book.EvidenceBook` and the
store keeps the chain (``store.evidence_store``)."""

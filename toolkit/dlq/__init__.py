"""``epistle dlq``: read, count, follow and replay a dead-letter topic (docs/dead-letters.md, "Operations").

``letters`` is pure (a dead letter's fields, the selection filters, counts, rendering); ``kafka`` reads
topics and replays. Nothing is imported here, so ``epistle --help`` stays light.
"""

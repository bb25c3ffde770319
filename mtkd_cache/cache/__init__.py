"""Stage 3, the teacher-logit cache: its manifest (the commit point), shards, lock, reader, verification and sharing."""

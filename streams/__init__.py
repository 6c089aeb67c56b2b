"""photoclust front ends: the command line (:mod:`streams.cli`), user file I/O (:mod:`streams.files`)
and everything that talks to Kafka."""

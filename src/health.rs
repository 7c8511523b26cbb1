//! Health probes (SPEC §11), run off the actor: `cmd`, `http`, `tcp`.

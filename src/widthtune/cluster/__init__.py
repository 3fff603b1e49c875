"""Scale-out: Ray cluster templates from a config, Ray Job submission, a local multi-node cluster."""

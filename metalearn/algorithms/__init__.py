"""Few-shot learning algorithms, one module each: protonet, maml, anil, proto_maml (inner_loop is their shared inner loop)."""

"""One module per ``busflow`` command, i.e. per DAG node: each ``run(...)`` takes params and explicit paths."""

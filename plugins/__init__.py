"""pycni CNI plugins: the protocol core and one module per plugin."""

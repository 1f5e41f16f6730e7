"""pycni-installer: puts the plugins and the conflist on a node."""

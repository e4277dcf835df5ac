"""The worker's two batch consumers (mode services the Faust app runs): read a batch, hand it
to its service, keep track of where to resume."""

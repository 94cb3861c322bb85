"""Storage backends behind one small async interface."""

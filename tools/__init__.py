"""Tools people run by hand (python -m tools.<name>): predict, report, bench, anatomy, scenarios, compare, watch."""

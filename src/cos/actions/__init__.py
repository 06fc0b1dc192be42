"""Actions: each a short, linear transcript of steps over the domain packages."""

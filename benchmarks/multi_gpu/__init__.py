"""K GPU workers behind the hot-adapter router against Ray Serve's default router."""

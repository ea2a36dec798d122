"""Framework adapters. Each is imported only when you import it; the core never does."""

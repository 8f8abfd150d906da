"""CPU fused implementations (oneDNN post-op fusion wrappers)."""

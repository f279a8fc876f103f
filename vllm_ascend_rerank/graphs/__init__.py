"""ACL graph capture and replay for the NPU (the static graph wrapper)."""

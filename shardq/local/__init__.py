"""The embedded local cloud (ministack on 127.0.0.1): no AWS account, no Docker."""

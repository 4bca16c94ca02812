"""Helpers the tests share: fault injection, the S3/Ray harness, manifests written for tests."""

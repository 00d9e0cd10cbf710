"""Blob storage upkeep: reclaiming blobs that no row refers to."""

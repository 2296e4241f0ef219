"""Training data: audio file discovery, the sample schema, shard writing and the WebDataset reader."""

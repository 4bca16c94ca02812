"""Plain, Ray-independent stages over batches of documents: fetch, filter, dedupe, tokenize, mix."""

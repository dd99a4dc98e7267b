//! pitr's domain: the repository's documents and what the commands do with them.

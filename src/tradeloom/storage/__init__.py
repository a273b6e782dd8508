"""Storage: the database, its schema and migrations, and the transactional outbox."""

"""Everything piwtwist keeps in PostgreSQL: the schema scripts, the
asynchronous connection pool and the functions the master calls."""

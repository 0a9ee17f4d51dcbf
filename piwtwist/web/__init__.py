"""The output tree: the package index, project pages, build logs and site
pages (:mod:`.page_writer`), and an optional web server for it
(:mod:`.server`)."""

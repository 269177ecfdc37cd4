"""The content-addressed cache of descriptor entries (:mod:`cvgl.cache.store`), its shards and manifests, and the import and export of other tools' feature files."""

"""Optional integrations with third-party libraries, each imported explicitly by the user
(``import ascan.integrations.<name>``); ``import ascan`` imports none of them, but for
``timm`` (which itself imports no timm: it registers the classifiers with timm's registry
once timm is imported), when timm is installed."""

"""draftline.lsp: the protocol edge (pygls server, documents, scheduler, CLI)."""

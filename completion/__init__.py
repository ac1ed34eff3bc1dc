"""draftline.completion: the model side, tokens in and drafts out. Never imports pygls."""

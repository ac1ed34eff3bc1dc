"""draftline.analysis: what the code says (tree-sitter, jedi). Never imports torch or the model."""

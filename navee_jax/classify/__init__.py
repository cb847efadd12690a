"""The supervised classifier method: a backbone with a softmax head over `data.label_column`'s classes,
trained with cross-entropy on shuffled batches of a stratified split (the study's classical route)."""

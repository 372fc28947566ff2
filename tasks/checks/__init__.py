"""The science behind clean, validate and split: image quality, perceptual hashing, HOG features,
the inspection cache, confident learning and the out-of-fold models that feed it."""

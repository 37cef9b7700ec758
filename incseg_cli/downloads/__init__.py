"""``incseg download``: the datasets and backbone weights of the papers, fetched, verified,
unpacked and converted to the layouts the dataset readers expect."""

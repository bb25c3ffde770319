"""`mtkd-cache demo`: the whole product on real BBC News text and a real pretrained encoder, offline."""

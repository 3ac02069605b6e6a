"""V-STaR (Hosseini et al., COLM 2024): a self-taught generator with a DPO-trained verifier that picks among samples."""

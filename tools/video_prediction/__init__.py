"""Video prediction metrics of the paper (tables 3-4, appendix K): I3D in PyTorch, FVD, the
8-real/48-predicted protocol with perplexity, figures and tables. The command is eval_video.py."""

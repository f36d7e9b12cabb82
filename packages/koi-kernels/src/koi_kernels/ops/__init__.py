"""One module per op: `<op>_reference.py` (torch), `<op>_triton.py` (kernels), `<op>s.py` (autograd + dispatch)."""

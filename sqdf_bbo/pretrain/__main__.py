"""``python -m sqdf_bbo.pretrain TARGET ...``."""
from sqdf_bbo.pretrain import main

main()

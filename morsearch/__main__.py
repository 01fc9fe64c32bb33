from morsearch.cli import main

main()

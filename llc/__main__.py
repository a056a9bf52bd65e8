from llc.cli import main

main()

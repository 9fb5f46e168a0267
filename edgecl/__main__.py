from edgecl.cli import main

main()

from edgecl.cli.app import main

main()

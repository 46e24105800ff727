from metalearn_server.app import main

main()

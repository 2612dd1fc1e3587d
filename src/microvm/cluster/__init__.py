"""The cluster: VMs as Pacemaker resources (``ocf:microvm:vm``) that come back on another node when theirs dies.

``agent`` is the resource agent Pacemaker runs on each node (the OCF actions and their exit codes),
``pacemaker`` every question to and write into the cluster through Pacemaker's own command-line
tools, ``resources`` the resources a host file asks for and how they differ from the cluster's.
"""

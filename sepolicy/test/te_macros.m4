dnl Stand-ins for the AOSP system/sepolicy macros the .te files use, written
dnl for the host test (tests/platform_files.rs). They grant what the AOSP
dnl macros of the same name grant, minus debug-only and Treble-compat extras,
dnl so checkpolicy sees the same allow and neverallow rules the device would.
dnl
dnl Permission sets (AOSP global_macros). AOSP's capability class set also
dnl holds cap_userns (capabilities in user namespaces); the stub base has
dnl only the capability class.
define(`global_capability_class_set', `{ capability }')
define(`r_dir_perms', `{ open getattr read search ioctl lock watch watch_reads }')
define(`r_file_perms', `{ getattr open read ioctl lock map watch watch_reads }')
define(`w_file_perms', `{ open append write lock map }')
define(`rw_file_perms', `{ getattr open read ioctl lock map watch watch_reads append write }')
dnl
dnl r_dir_file(domain, type): read dirs, files and symlinks of type.
define(`r_dir_file', `
allow $1 $2:dir r_dir_perms;
allow $1 $2:{ file lnk_file } r_file_perms;
')
dnl
dnl domain_auto_trans(old, exec_type, new): exec of the file enters new.
define(`domain_auto_trans', `
allow $1 $2:file { getattr open read execute map };
allow $1 $3:process transition;
allow $3 $2:file { entrypoint open read execute getattr map };
allow $3 $1:process sigchld;
type_transition $1 $2:process $3;
')
define(`init_daemon_domain', `domain_auto_trans(init, $1_exec, $1)')
dnl
dnl tmpfs_domain(domain): its tmpfs/memfd files get the type domain_tmpfs.
define(`tmpfs_domain', `
type $1_tmpfs, file_type;
type_transition $1 tmpfs:file $1_tmpfs;
allow $1 $1_tmpfs:file { read write getattr map };
')
dnl
dnl HAL attributes and membership.
define(`hal_attribute', `
attribute hal_$1;
expandattribute hal_$1 true;
attribute hal_$1_client;
expandattribute hal_$1_client true;
attribute hal_$1_server;
expandattribute hal_$1_server false;
neverallow { hal_$1_server -halserverdomain } domain:process fork;
')
define(`hal_server_domain', `
typeattribute $1 halserverdomain;
typeattribute $1 $2_server;
typeattribute $1 $2;
')
define(`hal_client_domain', `
typeattribute $1 halclientdomain;
typeattribute $1 $2_client;
')
dnl
dnl Binder.
define(`binder_use', `
allow $1 servicemanager:binder { call transfer };
allow servicemanager $1:binder { call transfer };
allow servicemanager $1:dir search;
allow servicemanager $1:file { read open };
allow servicemanager $1:process getattr;
')
define(`binder_call', `
allow $1 $2:binder { call transfer };
allow $2 $1:binder transfer;
allow $1 $2:fd use;
')
define(`add_service', `
allow $1 $2:service_manager { add find };
neverallow { domain -$1 } $2:service_manager add;
')
define(`hal_attribute_service', `
allow $1_client $2:service_manager find;
add_service($1_server, $2)
neverallow { domain -$1_client -$1_server } $2:service_manager find;
')

/* The MPI entry points for a build without MPI (the GPU bundle of tests/gpu/standalone, for a
 * GPU machine that has no MPI): the "world" is this process alone. Started by a launcher with
 * more than one rank, it refuses rather than run T copies that each think they are rank 0. */
#include <stdlib.h>

#include "gs_comm.h"

enum gs_status gs_comm_mpi_init(int *argc, char ***argv, struct gs_comm *out)
{
	const char *n = getenv("OMPI_COMM_WORLD_SIZE");

	(void)argc, (void)argv;
	if (!n)
		n = getenv("PMI_SIZE");
	if (n && atoi(n) > 1)
		return gs_errorf(GS_ERR_UNSUPPORTED, "this build has no MPI: it runs one rank (T = 1), not %s", n);
	return gs_comm_self_create(out);
}

void gs_comm_mpi_finalize(void)
{
}

int gs_comm_have_mpi(void)
{
	return 0;
}

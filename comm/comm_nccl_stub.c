/* Built without CUDA/NCCL (GS_CUDA=OFF, or no toolkit with NCCL found): the NCCL
 * communicator reports that it is unavailable; nothing here touches the bootstrap. */
#include "gs_comm.h"

enum gs_status gs_comm_nccl_create(const struct gs_comm *boot, int device, struct gs_comm *out)
{
	return gs_errorf(GS_ERR_UNSUPPORTED, "built without NCCL (configure with -DGS_CUDA=ON and a CUDA toolkit "
	                                     "that has NCCL)");
}

enum gs_status gs_comm_nccl_set_compute_stream(struct gs_comm *comm, void *cuda_stream)
{
	return gs_errorf(GS_ERR_UNSUPPORTED, "built without NCCL");
}

int gs_comm_have_nccl(void)
{
	return 0;
}

# ruff: noqa: UP031, C408 - written as ELEKTRONN 1 (Python 2) configs were: % formatting, dict(...)
# An ELEKTRONN 1 training config, the kind `densepred import-elektronn` converts. ELEKTRONN ran
# such files with execfile; densepred parses them and evaluates only plain data. Shapes are in
# x, y, z order here, as ELEKTRONN wrote them.

save_path = "~/CNN_Training/3D/"
save_name = 'membranes_e1'
save_path += save_name + '/'
param_file = None

activation_func = 'relu'
batch_size = 1
dropout_rates = []
n_dim = 3
desired_input = [95, 95, 9]
filters = [[4, 4, 1], [3, 3, 1], [3, 3, 3], [2, 2, 1]]
pool = [[2, 2, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]]
nof_filters = [16, 24, 32, 32]
pooling_mode = 'max'
MFP = [1, 0, 0, 0]
target = 'nll'

mode = 'img-img'
n_lab = 2
data_path = '~/data/'
label_path = '~/data/'
d_files = [('raw_%i.h5' % i, 'raw') for i in range(3)]
l_files = [('labels_%i.h5' % i, 'lab') for i in range(3)]
valid_cubes = [2]
anisotropic_data = True
warp_on = 0.5

n_steps = 10**6
max_runtime = 4 * 3600
history_freq = [500]
weight_decay = 0.0001
optimizer = 'SGD'
LR_decay = 0.993
SGD_params = dict(LR=0.005, momentum=0.9)
